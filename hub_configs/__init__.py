"""The model presets (one JSON file each), shipped inside the package as `mmavsr_training.hub_configs`: setup.cfg maps
this folder onto that package, so the wheel and the editable install both carry them. `mmavsr_training.presets` reads
them."""
