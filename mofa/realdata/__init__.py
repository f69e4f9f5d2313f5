"""Real face photographs: dataset adapters (adapters), Haar detection and the crop transform (detect),
MediaPipe landmarks mapped to the iBUG 68 (landmarks68), and the preparation into a training/eval
folder with its manifest (prepare)."""
