"""The errors kerasrnn raises for what a user can fix: one base class, one subclass per area.

    KerasRnnError              the base; the CLI prints it as one line
      ConfigError              a configuration field out of its domain
      DataError                a data source or file cannot be used
        IdxError               an IDX file is malformed (names the file and the defect)
        DataUnavailableError   a source is not available here (names the alternatives)
        InputError             images or rows given for prediction are malformed
      ModelFileError           a model file (.keras, .tflite) is missing or invalid
      ConversionError          the TFLite converter failed or produced non-builtin ops
      MicroError               TensorFlow Lite Micro could not load or run a model
      FirmwareError            a firmware build or QEMU run failed, or a tool is missing
      RunFolderError           a run folder cannot be used as asked
        RunExistsError         it holds another run, or this run with other settings
      SearchSpaceError         a malformed or impossible search space, or search state

Errors that are also mistakes in an argument's value subclass `ValueError` too, so that
callers catching `ValueError` keep working. This module imports nothing: the device
runtime uses it without TensorFlow.
"""

from __future__ import annotations


class KerasRnnError(Exception):
    """Base of every error kerasrnn raises for a problem the user can fix."""


class ConfigError(KerasRnnError, ValueError):
    """A configuration field is out of its domain; the message names the field and value."""


class DataError(KerasRnnError):
    """A data source or data file cannot be used."""


class IdxError(DataError, ValueError):
    """A file is not a valid MNIST IDX file; the message names the file and the defect."""


class DataUnavailableError(DataError):
    """The requested data source cannot be used here; the message names the alternatives."""


class InputError(DataError, ValueError):
    """Images, rows or image files given for prediction are malformed (says how)."""


class ModelFileError(KerasRnnError, ValueError):
    """A model file is missing, or is not a valid model of the expected kind."""


class ConversionError(KerasRnnError):
    """The model could not be converted to a builtin-only TFLite file."""


class MicroError(KerasRnnError):
    """TensorFlow Lite Micro could not load or run the model."""


class FirmwareError(KerasRnnError):
    """A firmware project could not be built or run (or a tool it needs is missing)."""


class RunFolderError(KerasRnnError):
    """A run folder cannot be used as asked."""


class RunExistsError(RunFolderError):
    """The run folder already holds a run that this call would overwrite."""


class SearchSpaceError(KerasRnnError, ValueError):
    """A malformed or impossible search space; the message names the hyperparameter."""
