"""The data pipeline, in the order a sample goes through it:

- `index/`: which videos and images a stage trains on (datasets.py), every file checked up front
  (scan.py per dataset, frame_check.py per file, cached), completion records of converted datasets;
- `sampling/`: every random choice of a sample from (seed, sample index) -> a ClipRecipe (video.py, static.py,
  geometry, colour, thin-plate splines; source.py hands recipes out by global sample index);
- `render/`: a ClipRecipe -> uint8 frames and masks (cpu.py with OpenCV; dali_graph.py, the same in DALI);
- `loaders/`: batches on the device (base.py the API, torch_loader.py and dali_loader.py the backends,
  build.py the trainer's entry point `build_train_loader`).
Nothing here imports the network or the trainer."""
