"""End-to-end evaluation of the detection pipeline on annotated scenes (PASCAL VOC)."""
