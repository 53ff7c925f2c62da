"""The local web UI (`python gui.py`): forms generated from the option declarations (`forms.py`), the app and its
tabs (`app.py`: Train, Runs, Tools, Generate), the run manager (`runs.py`) and the file-serving rules
(`context.py`). Gradio is imported only here, never by the scripts."""
