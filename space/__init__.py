"""The MEMatte Hugging Face Space: a gradio app from clicks to a full-resolution alpha matte.

Start it with ``python app.py`` (see ``space/README.md``). The modules: ``settings`` (command line and
environment), ``runtime`` (devices, ZeroGPU, the model singletons), ``session`` (one visitor's state and the
steps between UI and models), ``render`` (preview pictures), ``ui`` (the gradio Blocks), ``launch`` (startup),
``make_examples`` (the synthetic example photos).
"""
