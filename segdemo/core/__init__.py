"""The teaching ML: the model, its losses and metrics, transforms, evaluation, prediction, checkpoints and the
memory budget. Imports only the shared helpers at segdemo's root and segdemo.data; nothing here knows of
training runs, the server or the UI."""
