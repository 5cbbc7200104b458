"""The model presets (one JSON file each), shipped inside the package as `modeling_mmavsr.hub_configs`: setup.cfg maps
this folder onto that package, so the wheel and the editable install both carry them. `modeling_mmavsr.presets` reads
them."""
