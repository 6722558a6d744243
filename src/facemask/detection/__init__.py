"""Face detectors behind one interface (`FaceDetector`), chosen by `conf/detector/`."""

from facemask.detection.base import DetectorBackend, Face, FaceDetector, build_detector, detector_backend

__all__ = ["DetectorBackend", "Face", "FaceDetector", "build_detector", "detector_backend"]
