"""Real face photographs: dataset adapters (adapters), face detection -- Haar for the preparation and
the benchmark, MediaPipe BlazeFace for `mofa reconstruct` -- and the crop transform (detect), the
detectors' hit rates (detection_rate), MediaPipe landmarks mapped to the iBUG 68 (landmarks68; how the
map was fitted: fit_landmark_map), the preparation into a training/eval folder with its manifest
(prepare), and the crops a benchmark scores, every image and none dropped (benchmark_crops)."""
