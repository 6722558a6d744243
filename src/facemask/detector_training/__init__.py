"""Fine-tuning the RetinaFace-MobileNet0.25 face detector on annotated scenes (stage `train_detector`).

`scene_data` feeds augmented scene crops with their face boxes, `multibox` matches anchors and holds
the loss, `module` is the LightningModule and `export` writes the ONNX file the detector backend runs.
"""
