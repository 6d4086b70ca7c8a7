import hybridkv


def test_imports() -> None:
    assert hybridkv.__version__
    assert issubclass(hybridkv.HybridKVError, ValueError)
