"""TensorFlow-free ONNX -> TFLite emitter (flatbuffer written with the LiteRT schema object API).

``emitter.emit`` is the entry point; ``ops/`` holds one handler per ONNX op, registered in
``ops.HANDLERS``; ``context.Converter`` tracks per-tensor layout and quantization.
"""
