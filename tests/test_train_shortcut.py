"""The phantom's confounder works: plain training on the confounded split takes the shortcut."""

import pytest

from medlrp.data.phantom import PhantomSpec, write_phantom
from medlrp.train import TrainConfig, train_on_folder


@pytest.mark.slow
def test_plain_training_takes_the_token_shortcut(tmp_path):
    acc = {}
    for confounded in (False, True):
        root = tmp_path / str(confounded)
        write_phantom(root, PhantomSpec(kind="glioma", dims=2, n=400, seed=0, confounded=confounded))
        result = train_on_folder(root, None, config=TrainConfig(epochs=8, batch_size=16, seed=0))
        acc[confounded] = result.accuracy
    assert acc[False]["test"] >= 0.85  # the disease is learnable
    assert acc[True]["val"] >= 0.9  # the confounded model looks good on its own (confounded) val split
    assert acc[False]["test"] - acc[True]["test"] >= 0.15  # and loses on the unconfounded test split
