"""The short README of each package folder: what is in it and the exact calls on that platform."""
from __future__ import annotations

from .common import Bundle


def _notes(notes: list[str]) -> str:
    return "".join(f"- {n}\n" for n in notes) or "- none\n"


def android_readme(bundle: Bundle, name: str, models: list[str], labels: str | None, notes: list[str]) -> str:
    model = models[0]
    h, w = bundle.input_hw
    if bundle.task == "classify":
        tasks = f"""### MediaPipe Tasks (`com.google.mediapipe:tasks-vision`)

```kotlin
val options = ImageClassifier.ImageClassifierOptions.builder()
    .setBaseOptions(BaseOptions.builder().setModelAssetPath("{model}").build())
    .setMaxResults(5)
    .build()
val classifier = ImageClassifier.createFromOptions(context, options)
val result = classifier.classify(BitmapImageBuilder(bitmap).build())
val best = result.classificationResult().classifications()[0].categories()[0]   // label + probability
```

### TFLite Task Library (`org.tensorflow:tensorflow-lite-task-vision`)

```kotlin
val classifier = ImageClassifier.createFromFile(context, "{model}")
val categories = classifier.classify(TensorImage.fromBitmap(bitmap))[0].categories
```
"""
        out = "`probability` [1, classes] (softmax inside the graph)"
    else:
        tasks = f"""### MediaPipe Tasks (`com.google.mediapipe:tasks-vision`)

```kotlin
val options = ObjectDetector.ObjectDetectorOptions.builder()
    .setBaseOptions(BaseOptions.builder().setModelAssetPath("{model}").build())
    .setScoreThreshold({bundle.postprocess.get('score_threshold', 0.25)}f)
    .build()
val detector = ObjectDetector.createFromOptions(context, options)
val detections = detector.detect(BitmapImageBuilder(bitmap).build()).detections()  // boxes in image pixels + labels
```

### TFLite Task Library (`org.tensorflow:tensorflow-lite-task-vision`)

```kotlin
val detector = ObjectDetector.createFromFile(context, "{model}")
val detections = detector.detect(TensorImage.fromBitmap(bitmap))
```
"""
        out = ("`location` [1, M, 4] (ymin, xmin, ymax, xmax, 0..1 of the model input), `category` [1, M], "
               "`score` [1, M], `number of detections` [1] (TFLite_Detection_PostProcess)")
    return f"""# {name} for Android (LiteRT, MediaPipe Tasks, TFLite Task Library)

Made by `edgeinfer package` from the bundle `{bundle.path.name}` ({bundle.task}); precisions are
the bundle's, nothing was re-quantized.

| file | what |
|---|---|
{''.join(f'| `{m}` | LiteRT model with TFLite Metadata (name, normalization, labels zipped inside) |' + chr(10) for m in models)}{f'| `{labels}` | labels, one per line |' + chr(10) if labels else ''}| `package.json` | files with sha256, checks, notes |

Input: RGB image {w}x{h} (`image`, float32 NHWC, normalization in the metadata). Output: {out}.

Put the files in `app/src/main/assets/` and keep them uncompressed (the labels are a zip inside
the model; memory-mapping needs stored files):

```kotlin
android {{ androidResources {{ noCompress += "tflite" }} }}
```

{tasks}
### LiteRT `Interpreter` (`com.google.ai.edge.litert:litert`)

```kotlin
val model = FileUtil.loadMappedFile(context, "{model}")
val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(4))
val input = TensorImage(DataType.FLOAT32).apply {{ load(bitmap) }}
val processor = ImageProcessor.Builder()
    .add(ResizeOp({h}, {w}, ResizeOp.ResizeMethod.BILINEAR))
    .add(NormalizeOp(MEAN, STD))          // the values in the model's NormalizationOptions
    .build()
val outputs = HashMap<Int, Any>()        // see the output shapes above
interpreter.runForMultipleInputsOutputs(arrayOf(processor.process(input).buffer), outputs)
```

Android Studio's ML Model Binding (File > New > Other > TensorFlow Lite Model) reads the same
metadata and generates a typed wrapper.

## Notes
{_notes(notes)}"""


def ios_readme(bundle: Bundle, name: str, models: list[str], notes: list[str]) -> str:
    model = models[0]
    cls = model.replace(".mlpackage", "").replace("-", "_")
    if bundle.task == "classify":
        handle = """    guard let results = request.results as? [VNClassificationObservation] else { return }
    let best = results.first   // best.identifier (label), best.confidence (probability)"""
    else:
        handle = """    guard let results = request.results as? [VNRecognizedObjectObservation] else { return }
    for obj in results {   // obj.labels.first?.identifier, obj.confidence, obj.boundingBox (0..1, origin bottom-left)
    }"""
    return f"""# {name} for iOS / macOS (Core ML + Vision)

Made by `edgeinfer package` from the bundle `{bundle.path.name}` ({bundle.task}); precisions are
the bundle's, nothing was re-quantized.

| file | what |
|---|---|
{''.join(f'| `{m}` | Core ML package |' + chr(10) for m in models)}| `package.json` | files with sha256, checks, notes |

Drag the `.mlpackage` into Xcode (it generates the `{cls}` class), then:

```swift
let model = try VNCoreMLModel(for: {cls}(configuration: MLModelConfiguration()).model)
let request = VNCoreMLRequest(model: model) {{ request, _ in
{handle}
}}
request.imageCropAndScaleOption = {'.scaleFill' if bundle.preprocess.resize_mode == 'stretch' else '.centerCrop' if bundle.preprocess.crop else '.scaleFit'}
try VNImageRequestHandler(cgImage: image).perform([request])
```

## Notes
{_notes(notes)}"""


def ort_readme(bundle: Bundle, name: str, models: list[str], config: str, reports: dict[str, str], notes: list[str]) -> str:
    model = models[0]
    c = int(bundle.manifest["input"]["shape"][1])
    h, w = bundle.input_hw
    rep = "".join(f"\n### {m}\n\n```\n{r.strip()}\n```\n" for m, r in reports.items())
    return f"""# {name} for ONNX Runtime Mobile

Made by `edgeinfer package` from the bundle `{bundle.path.name}` ({bundle.task}) with onnxruntime's
own tools (`convert_onnx_models_to_ort`, `check_onnx_model_mobile_usability`).

| file | what |
|---|---|
{''.join(f'| `{m}` | ORT format model (fixed shapes) |' + chr(10) for m in models)}| `{config}` | operators and types for a reduced ORT build (`build.sh --include_ops_by_config {config} --enable_reduced_operator_type_support`) |
| `package.json` | files with sha256, checks, notes |

Input `{bundle.manifest['input']['name']}`: float32 [1, {c}, {h}, {w}] preprocessed as the bundle's `preprocess`
({bundle.preprocess.to_dict()}). The outputs are the bundle's raw outputs (the app applies the
bundle's `postprocess`).

Android (`com.microsoft.onnxruntime:onnxruntime-android`, or `onnxruntime-mobile` for reduced builds):

```kotlin
val env = OrtEnvironment.getEnvironment()
val session = env.createSession(assets.open("{model}").readBytes(),
    OrtSession.SessionOptions().apply {{ addNnapi() }})
val input = OnnxTensor.createTensor(env, floatBuffer, longArrayOf(1, {c}, {h}, {w}))
val outputs = session.run(mapOf("{bundle.manifest['input']['name']}" to input))
```

iOS (`onnxruntime-objc` pod):

```swift
let options = try ORTSessionOptions()
try options.appendCoreMLExecutionProvider(with: ORTCoreMLExecutionProviderOptions())
let session = try ORTSession(env: ORTEnv(loggingLevel: .warning), modelPath: path, sessionOptions: options)
```

## NNAPI / Core ML execution provider usability (onnxruntime's checker)
{rep}
## Notes
{_notes(notes)}"""
