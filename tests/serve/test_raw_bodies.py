"""Raw tensor bodies on ``POST /v1/predict`` (``.npy`` and octet streams) against a real server on 127.0.0.1, and the
serving device option."""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest
import torch

import tracemark as tm
from tracemark.errors import DeviceUnavailableError
from tracemark.package.licence import OutputPolicy

NPY = {"Content-Type": "application/x-npy"}


def npy(x: np.ndarray, *, fortran: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asfortranarray(x) if fortran else x, allow_pickle=False)
    return buffer.getvalue()


def npy_header_only(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A .npy header (format 1.0) promising ``shape`` of ``descr``, with no values after it."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode("latin-1")
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def raw(shape: str, dtype: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/octet-stream", "X-Tracemark-Shape": shape}
    if dtype is not None:
        headers["X-Tracemark-Dtype"] = dtype
    return headers


def answer(response) -> tuple[list, list]:
    assert response.status_code == 200, response.text
    body = response.json()
    return body["labels"], body["probabilities"]


def test_npy_and_octet_stream_bodies_get_exactly_the_json_answers(net, digits, run_server) -> None:
    x = digits.x_test[:6].astype(np.float32)
    pixels = np.round(x * 255).astype(np.uint8)
    half = x.astype(np.float16)
    with run_server(net) as srv:
        token = srv.clients.add("tensors", OutputPolicy("probabilities")).token
        for sent, values in ((x, x), (pixels, pixels.astype(np.float32) / 255.0), (half, half.astype(np.float32))):
            expected = answer(srv.post(token, {"inputs": values.tolist()}))
            shape = ",".join(map(str, sent.shape))
            flat = f"{len(sent)},{sent[0].size}"
            bodies = [
                (npy(sent), NPY),
                (npy(sent.astype(sent.dtype.newbyteorder(">"))), NPY),  # big-endian
                (npy(sent, fortran=True), {"Content-Type": "application/npy"}),
                (npy(sent.reshape(len(sent), -1)), NPY),  # flat inputs
                (sent.astype(sent.dtype.newbyteorder("<")).tobytes(), raw(shape, sent.dtype.name)),
                (sent.tobytes(), raw(flat, sent.dtype.name.upper())),
            ]
            for body, headers in bodies:
                assert answer(srv.post(token, content=body, headers=headers)) == expected, (sent.dtype, headers)
        answer(srv.post(token, content=x.astype(np.float64).tobytes(), headers=raw("6,1,8,8", "float64")))
        assert answer(srv.post(token, content=x.tobytes(), headers=raw("6,1,8,8"))) == answer(srv.post(token, {"inputs": x.tolist()}))
        assert srv.server.audit.count() == 6 * (3 * 7 + 3)  # one row per input, every body kind audited alike


def test_http_target_sends_npy_bodies_and_gets_the_json_answers(net, digits, run_server) -> None:
    x = digits.x_test[:40]
    with run_server(net, rate=1e6, burst=1e6) as srv:
        token = srv.clients.add("verifier", OutputPolicy("probabilities")).token
        url = f"{srv.url}/v1/predict"
        with tm.HttpTarget(url, api_key=token, batch_size=16) as as_json, \
                tm.HttpTarget(url, api_key=token, batch_size=16, encoding="npy") as as_npy:
            by_json, by_npy = as_json.predict(x), as_npy.predict(x)
        assert np.array_equal(by_json.labels, by_npy.labels) and np.array_equal(by_json.probabilities, by_npy.probabilities)
        sent = as_npy.transcript_dict()
        assert sent["encoding"] == "npy" and [r["input_sha256"] for r in sent["records"]] == \
            [r["input_sha256"] for r in as_json.transcript_dict()["records"]]
    with pytest.raises(ValueError, match="request_template"):
        tm.HttpTarget(url, encoding="npy", request_template={"x": "{{inputs}}"})


def _object_npy() -> bytes:
    """What ``np.save`` writes for an object array: a .npy header whose values are a pickle."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _bad_npy_header() -> bytes:
    body = npy_header_only((2, 1, 8, 8))
    return body.replace(b"'descr'", b"'descx'") + bytes(2 * 64 * 4)


def _huge_npy_header() -> bytes:
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 8, 8), " + b" " * 5000 + b"}\n"
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header + bytes(256)


X2 = np.full((2, 1, 8, 8), 0.5, np.float32)
NAN = X2.copy()
NAN[1, 0, 3, 3] = np.nan


BAD_BODIES = {  # name: (body, headers, status, what the message says)
    "object-dtype": (_object_npy, NPY, 422, "object arrays"),
    "pickle": (lambda: pickle.dumps(X2), NPY, 422, "not a .npy file"),
    "truncated-npy": (lambda: npy(X2)[:-10], NPY, 422, "truncated"),
    "trailing-npy": (lambda: npy(X2) + b"\0" * 4, NPY, 422, "trailing bytes"),
    "wrong-shape": (lambda: npy(np.zeros((2, 1, 7, 7), np.float32)), NPY, 422, "shape [2, 1, 7, 7]"),
    "int64": (lambda: npy(X2.astype(np.int64)), NPY, 422, "holds int64"),
    "empty": (lambda: npy(np.zeros((0, 1, 8, 8), np.float32)), NPY, 422, "holds no inputs"),
    "nan": (lambda: npy(NAN), NPY, 422, "input 1 contains NaN"),
    "range": (lambda: npy(X2 * 3), NPY, 422, "outside the allowed range"),
    "bad-header": (_bad_npy_header, NPY, 422, "bad .npy header"),
    "huge-header": (_huge_npy_header, NPY, 422, "bad .npy header"),
    "no-shape-header": (lambda: X2.tobytes(), {"Content-Type": "application/octet-stream"}, 422, "needs the header X-Tracemark-Shape"),
    "unknown-dtype": (lambda: X2.tobytes(), raw("2,1,8,8", "int64"), 422, "X-Tracemark-Dtype 'int64'"),
    "bad-shape-header": (lambda: X2.tobytes(), raw("2;1;8;8"), 422, "X-Tracemark-Shape '2;1;8;8'"),
    "truncated-raw": (lambda: X2.tobytes()[:-1], raw("2,1,8,8"), 422, "truncated"),
    "raw-shape": (lambda: X2.tobytes(), raw("2,64,1"), 422, "each input [64, 1]"),
    "csv": (lambda: X2.tobytes(), {"Content-Type": "text/csv"}, 415, "Content-Type 'text/csv' is not read here"),
    "form": (lambda: b"inputs=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "curl -d"),
}


def test_each_bad_tensor_body_is_refused_with_a_message_naming_it(net, run_server) -> None:
    with run_server(net, rate=1e6, burst=1e6) as srv:
        token = srv.clients.add("sender").token
        for name, (body, headers, status, message) in BAD_BODIES.items():
            response = srv.post(token, content=body(), headers=headers)
            assert response.status_code == status and message in response.json()["detail"], (name, response.text)
            assert srv.post(token, {"inputs": X2.tolist()}).status_code == 200, name  # the connection and the client still work
        assert srv.server.audit.count() == 2 * len(BAD_BODIES)  # only the good requests' inputs were answered


def test_tensor_bodies_are_admitted_by_their_header_count_before_any_value_is_read(net, run_server) -> None:
    with run_server(net, max_batch=16, max_body_bytes=2048) as srv:
        token = srv.clients.add("counted", rate=1e-6, burst=10).token
        large = srv.post(token, content=npy(np.zeros((9, 1, 8, 8), np.float32)), headers=NPY)  # 2,432 bytes
        assert large.status_code == 413 and "at most 2048" in large.json()["detail"]
        over = srv.post(token, content=npy_header_only((1000, 1, 8, 8)), headers=NPY)  # promises 1000 inputs, holds none
        assert over.status_code == 422 and "batch of 1000 inputs is larger than the maximum of 16" in over.json()["detail"]
        over = srv.post(token, content=b"", headers=raw("17,1,8,8"))
        assert over.status_code == 422 and "batch of 17 inputs" in over.json()["detail"]
        # 2 tokens spent by the two 422s (the 413 came before the key check); 7 inputs charged from the octet stream's headers
        assert srv.post(token, content=np.zeros((7, 1, 8, 8), np.float32).tobytes(), headers=raw("7,1,8,8")).status_code == 200
        # one token left: a .npy header promising 2 inputs is refused for rate (429), before its missing values are noticed
        limited = srv.post(token, content=npy_header_only((2, 1, 8, 8)), headers=NPY)
        assert limited.status_code == 429 and limited.headers["Retry-After"]
        limited = srv.post(token, content=b"\0" * 3, headers=raw("2,1,8,8"))
        assert limited.status_code == 429
        assert srv.server.audit.count() == 7


def test_the_api_describes_the_three_body_types(net, run_server) -> None:
    with run_server(net) as srv:
        info = srv.http.get("/v1/model").json()
        assert info["content_types"] == ["application/json", "application/x-npy", "application/npy", "application/octet-stream"]
        assert info["tensor_dtypes"] == ["float32", "float16", "float64", "uint8"]
        operation = srv.http.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]
        assert set(operation["requestBody"]["content"]) == {"application/json", "application/x-npy", "application/octet-stream"}
        assert "X-Tracemark-Shape" in operation["requestBody"]["content"]["application/octet-stream"]["schema"]["description"]
        assert "415" in operation["responses"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_the_serving_device_is_the_cpu_here_and_a_missing_cuda_is_one_line(net, tmp_path) -> None:
    from tracemark.serve import ServeConfig, from_module
    from tracemark.serve.model import onnx_providers, serving_device

    assert serving_device("auto") == torch.device("cpu") and onnx_providers("auto") == ["CPUExecutionProvider"]
    assert from_module(net, device="auto").device == "cpu"
    with pytest.raises(DeviceUnavailableError, match="'cuda' is not available on this machine") as caught:
        from_module(net, device="cuda")
    assert "\n" not in str(caught.value)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(DeviceUnavailableError, match="no CUDAExecutionProvider") as caught:
            onnx_providers("cuda:0")
        assert "\n" not in str(caught.value)
    path = tmp_path / "net.safetensors"
    tm.save_model(net, path)
    with pytest.raises(DeviceUnavailableError, match="'cuda:1' is not available"):
        ServeConfig(model=str(path), device="cuda:1").load_model()
    assert ServeConfig(model=str(path)).load_model().device == "cpu"
