"""Detection post-processing for the runtime (numpy only): boxes, decoders, NMS, results.

Modules: ``boxes`` (formats, IoU), ``decoders`` (raw head -> candidate boxes), ``nms``
(suppression), ``postprocess`` (config + ``DetectPostprocessor`` + results), ``metrics``
(COCO mAP, top-k accuracy), ``visualize`` (Pillow drawing).
"""
