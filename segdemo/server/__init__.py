"""What a shared server needs around training: the job manager and its fair queue, run folders that survive a
restart, owner tokens, fair-use limits, ZeroGPU, a Ray cluster's runs, hosting, and each browser's labelled
photos. Built on segdemo.training and below; the UI is the only thing above it."""
