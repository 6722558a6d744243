"""Face detectors behind one interface (`FaceDetector`), chosen by `conf/detector/`."""

from facemask.detection.base import Face, FaceDetector, build_detector

__all__ = ["Face", "FaceDetector", "build_detector"]
