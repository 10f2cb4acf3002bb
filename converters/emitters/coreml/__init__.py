"""Core ML (mlprogram) emitter: ONNX graph -> MIL program -> ``.mlpackage``, plus a numpy MIL
evaluator (``mil_eval``) that executes the saved package on any host for verification."""
