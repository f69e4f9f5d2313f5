"""Real face photographs: dataset adapters (adapters), Haar detection and the crop transform (detect),
MediaPipe landmarks mapped to the iBUG 68 (landmarks68; how the map was fitted: fit_landmark_map), the
preparation into a training/eval folder with its manifest (prepare), and the crops a benchmark scores,
every image and none dropped (benchmark_crops)."""
