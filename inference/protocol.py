"""The Open Inference Protocol (KServe / Triton "v2") for the installed models.

A model is named ``<modality>-<arch>`` (``ct-vgg16``). It takes one FP32 tensor,
``input``, shaped ``[n, h, w, 3]`` (NHWC), already preprocessed as its card says
(``model_input``), and gives one, ``probabilities``: a row per image, a column per card
class, in the card's order (a single sigmoid unit is spelled out as two columns, as
``covid_probability`` reads it). Nothing here knows HTTP: the web edge maps the
domain errors raised here to statuses.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .batching import MAX_BATCH
from .cache import LoadedModel
from .cards import ModelCard, check_output_width
from .errors import InvalidRequest, ModelNotFound, ModelUnavailable
from .registry import ModelEntry

INPUT_NAME, OUTPUT_NAME, DATATYPE = "input", "probabilities", "FP32"
PLATFORM = "keras"  # the model files are Keras .h5, whichever runtime serves them
MAX_ID_CHARS = 256
NUMBERS = (int, float)  # what JSON numbers parse to; bool is not one of them
BINARY_UNSUPPORTED = ("Binary tensor data is not supported: send the tensor as JSON "
                      "numbers in 'data' (tritonclient: binary_data=False).")


@dataclass(frozen=True)
class InferRequest:
    """A checked request: the batch to run and the id to echo."""

    batch: np.ndarray  # (n, h, w, 3) float32
    request_id: str | None


def model_name(entry: ModelEntry) -> str:
    return f"{entry.modality}-{entry.architecture}"


def find_model(entries: list[ModelEntry], name: str) -> ModelEntry:
    """The installed slot a protocol name means; ModelNotFound (404) says which exist."""
    for entry in entries:
        if model_name(entry) == name:
            if entry.available:
                return entry
            raise ModelNotFound(f"The model {name!r} is not installed: put "
                                f"{entry.expected_relpath} under the model folder.")
    installed = ", ".join(model_name(e) for e in entries if e.available) or "none"
    raise ModelNotFound(f"Unknown model {name[:60]!r}: models are named <modality>-<arch>; "
                        f"the installed ones are {installed}.")


def usable_model(entries: list[ModelEntry], name: str) -> ModelEntry:
    """As :func:`find_model`, and its card must be valid: a placeholder card's sizes
    would only mislead a client."""
    entry = find_model(entries, name)
    if entry.card_error:
        raise ModelUnavailable(f"The model card {entry.card_error} is invalid.")
    return entry


def ready_model(entries: list[ModelEntry], name: str,
                loaded: Callable[[ModelEntry], LoadedModel | None]) -> ModelEntry:
    """Ready means it can serve: a usable model whose card fits it once loaded (it
    loads on the first inference, as for ``/api/v1/predict``)."""
    entry = usable_model(entries, name)
    model = loaded(entry)
    if model is not None and model.card_error:
        raise ModelUnavailable(model.card_error)
    return entry


def check_server_ready(entries: list[ModelEntry]) -> None:
    """Ready when at least one installed model has a valid card."""
    if not any(e.available and not e.card_error for e in entries):
        raise ModelUnavailable("No model is ready: none is installed with a valid card.")


def metadata(entry: ModelEntry) -> dict:
    """The protocol's model metadata, plus (as parameters) what the card says a client
    must do to an image before sending it."""
    card = entry.card
    height, width = card.input_size
    return {
        "name": model_name(entry),
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, height, width, 3]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": DATATYPE,
                     "shape": [-1, len(card.classes)]}],
        "parameters": {"classes": ",".join(card.classes), "covid_index": card.covid_index,
                       "threshold": card.threshold, "preprocessing": card.preprocessing,
                       "resize": card.resize, "max_batch_size": MAX_BATCH},
    }


def parse_body(data: bytes) -> dict:
    """The request body as a JSON object, or a 400 that says what is wrong with it
    (nesting too deep for the parser included: never a 500)."""
    try:
        body = json.loads(data)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"The body is not valid JSON ({exc.msg} at line {exc.lineno} "
                             f"column {exc.colno}): send an inference request object.") from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8, or nested beyond reason
        raise InvalidRequest("The body is not readable JSON: send an inference request "
                             "object as UTF-8.") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object: {\"inputs\": [...]}.")
    return body


def parse_request(body: dict, card: ModelCard) -> InferRequest:
    """Check an inference request against the model's card; the batch to run."""
    request_id = body.get("id")
    if request_id is not None and (not isinstance(request_id, str)
                                   or len(request_id) > MAX_ID_CHARS):
        raise InvalidRequest(f"'id' must be a string of at most {MAX_ID_CHARS} characters.")
    _check_outputs(body.get("outputs"))
    tensor = _only_input(body.get("inputs"))
    if tensor.get("datatype") != DATATYPE:
        raise InvalidRequest(f"The input's datatype must be {DATATYPE}, not "
                             f"{str(tensor.get('datatype'))[:20]!r}.")
    shape = _shape(tensor.get("shape"), card)
    if "data" not in tensor:
        raise InvalidRequest(BINARY_UNSUPPORTED if tensor.get("parameters")
                             else "The input has no 'data'.")
    return InferRequest(_values(tensor["data"], shape), request_id)


def _check_outputs(outputs) -> None:
    """Requested outputs are optional; any that are asked for must exist."""
    if outputs is None:
        return
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidRequest("'outputs' must be a list of objects with a 'name'.")
    for output in outputs:
        if output.get("name") != OUTPUT_NAME:
            raise InvalidRequest(f"Unknown output {str(output.get('name'))[:40]!r}: this "
                                 f"model's output is {OUTPUT_NAME!r}.")


def _only_input(inputs) -> dict:
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidRequest(f"'inputs' must be a list of one tensor, {INPUT_NAME!r}.")
    if inputs[0].get("name") != INPUT_NAME:
        raise InvalidRequest(f"Unknown input {str(inputs[0].get('name'))[:40]!r}: this "
                             f"model's input is {INPUT_NAME!r}.")
    return inputs[0]


def _shape(shape, card: ModelCard) -> list[int]:
    """``[n, h, w, 3]`` with the card's size and ``1 <= n <= MAX_BATCH``."""
    height, width = card.input_size
    expected = f"[n, {height}, {width}, 3] (NHWC, preprocessed '{card.preprocessing}')"
    if not isinstance(shape, list) or len(shape) != 4 \
            or not all(type(v) is int for v in shape) or shape[1:] != [height, width, 3]:
        raise InvalidRequest(f"The input's shape must be {expected}, not {str(shape)[:60]}.")
    if not 1 <= shape[0] <= MAX_BATCH:
        raise InvalidRequest(f"A batch holds 1 to {MAX_BATCH} images, not {shape[0]}.")
    return shape


def _values(data, shape: list[int]) -> np.ndarray:
    """Flat (row-major) or nested ``data`` -> a float32 array of ``shape``: finite
    numbers only, as many as the shape holds."""
    leaves = _flatten(data, shape)
    if len(leaves) != math.prod(shape):
        raise InvalidRequest(f"'data' holds {len(leaves)} numbers but the shape {shape} "
                             f"needs {math.prod(shape)}.")
    if not all(type(v) in NUMBERS for v in leaves):
        raise InvalidRequest("'data' must hold numbers only.")
    try:
        values = np.array(leaves, dtype=np.float64)
    except OverflowError as exc:  # an integer beyond any float
        raise InvalidRequest("'data' holds a number beyond FP32's range.") from exc
    with np.errstate(over="ignore"):
        values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise InvalidRequest("'data' must hold finite numbers within FP32's range "
                             "(no NaN or infinity).")
    return values.reshape(shape)


def _flatten(data, shape: list[int]) -> list:
    """The leaves of ``data`` in row-major order; nested lists must follow the shape."""
    if not isinstance(data, list):
        raise InvalidRequest("'data' must be a list of numbers (flat or nested).")
    if not data or not isinstance(data[0], list):
        return data
    level = [data]
    for size in shape:
        if not all(isinstance(item, list) and len(item) == size for item in level):
            raise InvalidRequest(f"Nested 'data' must follow the shape {shape}.")
        level = [value for item in level for value in item]
    return level


def probabilities(outputs: np.ndarray, card: ModelCard) -> np.ndarray:
    """The model's rows as one column per card class (a sigmoid unit is P(classes[1]),
    as Keras trains it)."""
    values = np.asarray(outputs, dtype=np.float32).reshape(len(outputs), -1)
    problem = check_output_width(card, values.shape[1])
    if problem:
        raise ModelUnavailable(f"The model does not fit its card: {problem}.")
    if values.shape[1] == 1 and len(card.classes) == 2:
        values = np.concatenate([1 - values, values], axis=1)
    if not np.isfinite(values).all():
        raise InvalidRequest("The model's output is not finite for this input: send values "
                             "preprocessed as the model card says.")
    return values


def response(entry: ModelEntry, request: InferRequest, outputs: np.ndarray) -> dict:
    """The protocol's inference response for one model run."""
    values = probabilities(outputs, entry.card)
    answer = {"model_name": model_name(entry),
              "outputs": [{"name": OUTPUT_NAME, "datatype": DATATYPE,
                           "shape": list(values.shape), "data": values.ravel().tolist()}]}
    if request.request_id is not None:
        answer["id"] = request.request_id
    return answer
