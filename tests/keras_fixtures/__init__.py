"""Keras-side helpers and small committed Keras files for bnkit's Keras-interop tests.

``small_*`` files were written by tf_keras 2.21 and Keras 3.15.1 from the ``small`` recipe
of ``keras_jobs.py``; regenerate them with ``python tests/keras_fixtures/make_fixtures.py``.
"""
