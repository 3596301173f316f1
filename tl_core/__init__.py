"""Transfer Learning Studio's engine: data -> advisor -> strategy -> metrics -> store.

Keras 3 on TensorFlow. This package never imports Streamlit; the app, the command line and the
job worker all call it the same way and observe it through :mod:`tl_core.progress`.
"""

import os
import time

# When this process first imported the engine (its start, give or take the interpreter's own start-up):
# the start of a run's timeline, so its breakdown shows what the process spent before the run began.
PROCESS_STARTED_AT = time.time()

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) is noise for our users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
