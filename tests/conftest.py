import pytest

from tda.tests import helpers


@pytest.fixture(scope="session")
def lama_texts():
    return helpers.sentences(160)


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_model_dir(request, tmp_path_factory, lama_texts):
    out = tmp_path_factory.mktemp(f"model-{request.param}")
    return helpers.build_tiny_model(out, request.param, lama_texts)


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, lama_texts):
    return helpers.build_tiny_model(tmp_path_factory.mktemp("gpt2"), "gpt2", lama_texts)
