import numpy as np
import pytest

from capsrobust.detection import ReconstructionDetector, auroc, reconstruction_distances, roc_curve
from capsrobust.errors import ConfigError
from capsrobust.models import create_model


def test_threshold_gives_five_percent_fpr_on_its_fitting_data():
    distances = np.random.default_rng(0).gamma(2.0, 1.0, size=2000)
    detector = ReconstructionDetector.fit(distances)
    assert detector.flags(distances).mean() == pytest.approx(0.05, abs=0.002)
    assert detector.fitted_on == 2000 and detector.percentile == 95


def test_auroc_and_roc():
    rng = np.random.default_rng(1)
    negatives, positives = rng.normal(0, 1, 500), rng.normal(2, 1, 500)
    assert auroc(negatives, negatives.copy()) == pytest.approx(0.5)
    assert auroc(negatives, negatives + 100) == 1.0
    area = auroc(negatives, positives)
    assert 0.88 < area < 0.94  # Phi(2 / sqrt(2)) = 0.921
    fpr, tpr = roc_curve(negatives, positives)
    assert np.trapezoid(tpr, fpr) == pytest.approx(area, abs=1e-6)
    assert np.isnan(auroc(negatives, np.empty(0)))


def test_distances_are_l2_to_the_reconstruction():
    model = create_model("cnn-recon")
    images = np.random.default_rng(2).uniform(size=(5, 28, 28, 1)).astype("float32")
    reconstructions = np.asarray(model(images)["reconstruction"])
    expected = np.linalg.norm((images - reconstructions).reshape(5, -1), axis=1)
    np.testing.assert_allclose(reconstruction_distances(model, images, batch_size=2), expected, rtol=1e-5)
    with pytest.raises(ConfigError, match="no reconstruction decoder"):
        reconstruction_distances(create_model("cnn-small"), images)
