"""Training: the loop (trainer), presets planned as time budgets (recipes), torchrun, instant mode and the
familiarity statistics a checkpoint keeps; a run's turns stitched into one run (turns). Built on segdemo.core
and segdemo.data."""
