"""Real face photographs: dataset adapters (adapters), face detection -- Haar for the preparation,
MediaPipe BlazeFace for `mofa reconstruct` -- and the crop transform (detect), the detectors' hit rates
(detection_rate), MediaPipe landmarks mapped to the iBUG 68 (landmarks68), and the preparation into a
training/eval folder with its manifest (prepare)."""
