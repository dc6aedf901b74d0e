"""deepcovidxr: a Keras 3 re-implementation of the DeepCOVID-XR chest X-ray ensemble.

Research software, not a medical device: its outputs must not be used for diagnosis.
"""

__version__ = "0.1.0"

DISCLAIMER = (
    "deepcovidxr is research software, not a medical device. It is not approved for clinical use; "
    "its outputs must not be used for diagnosis or patient management."
)
