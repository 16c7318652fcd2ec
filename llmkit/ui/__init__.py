"""`llmkit ui`: a web page (Gradio) for the whole life of a model, in Spanish and English.

    llmkit ui [--host 127.0.0.1] [--port 7860] [--lang es|en] [--auth user:password] [--runs DIR] [--recipes DIR]

The page is thin: it shows the recipes (their YAML, every key with its default and help) and
starts the same command a user would type, in a child process of its own process group (so
closing the browser does not stop it, and the page finds it again), follows its log, progress
and curves, stops it with SIGTERM (the stage saves a checkpoint; starting again resumes), lists
the run directories, evaluates and compares, chats with runs and serves them.

Safe by default: it binds 127.0.0.1; any other address needs ``--auth user:password`` (or
``LLMKIT_UI_AUTH``).  It writes only under the runs directory (``--runs``, default ``runs/``)
and the caches; one run at a time per output directory (the run lock).
"""

