"""The cross-check against torchattacks: pairing per-image outcomes, the eps-ball check, and end to end on the zoo's
cnn-small (torchattacks in the real torch-backend process the command starts)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from capsrobust.crosscheck import CrossCheck, check_adversarial, selected_cells


def test_pairing_counts_the_images_each_implementation_alone_fooled():
    ours = np.array([True, True, False, False, True, True])  # True: still classified correctly
    theirs = np.array([True, False, False, True, False, False])
    check = CrossCheck.pair("m", "autoattack", 0.1, ours, theirs, invalid=0, theirs_fooled_by={}, seconds=1.0)
    assert (check.images, check.ours_robust, check.theirs_robust) == (6, 4, 2)
    assert (check.only_ours_fooled, check.only_theirs_fooled) == (1, 3)
    assert check.theirs_survived == "100100"  # per image, for a worst case over both implementations
    assert check.p_value == pytest.approx(0.625)  # two-sided exact binomial, 1 of 4 discordant pairs
    assert "within chance" in check.verdict and "missed 3 of 6" in check.verdict
    record = check.to_dict()
    assert record["ours_robust_ci"][0] < 4 / 6 < record["ours_robust_ci"][1]


def test_adversarial_images_outside_the_ball_or_the_unit_range_do_not_count():
    clean = np.full((4, 2, 2, 1), 0.5, "float32")
    adversarial = clean.copy()
    adversarial[1, 0, 0, 0] += 0.1 + 1e-3  # beyond eps 0.1
    adversarial[2] = 0.0  # inside the ball at eps 0.5, and in [0, 1]
    adversarial[3, 0, 0, 0] = 1.2  # outside [0, 1]
    assert check_adversarial(clean, adversarial, 0.1).tolist() == [True, False, False, False]
    assert check_adversarial(clean, adversarial, 0.5).tolist() == [True, True, True, False]
    assert check_adversarial(clean, adversarial, 1.0, norm="2").tolist() == [True, True, True, False]


def test_models_are_named_as_on_the_command_line_defended_apart_from_undefended():
    def cell(model_id, attack="autoattack", eps=0.3, transfer_source=None):  # cells record the registry name alone
        return SimpleNamespace(model_id=model_id, model="capsnet-small", attack=attack, eps=eps,
                               transfer_source=transfer_source)

    defended, plain = "capsnet-small-at-mnist-20261202-195446-b63096", "capsnet-small-mnist-20261201-182816-11004c"
    cells = [cell(defended), cell(plain), cell(plain, eps=0.1), cell(plain, attack="pgd100"),
             cell(plain, transfer_source="cnn-small-mnist-20261201-184303-064782")]
    assert selected_cells(cells, ["capsnet-small-at"], None) == [cells[0]]
    assert selected_cells(cells, ["capsnet-small"], None) == cells[1:3]
    assert selected_cells(cells, [plain], (0.1,)) == [cells[2]]
    assert selected_cells(cells, None, None) == cells[:3]


def test_a_directory_that_is_no_sweep_is_one_line_and_exit_2(tmp_path, capsys):
    from capsrobust.cli import main

    assert main(["crosscheck", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "sweep.json does not exist" in error and error.count("\n") == 1


@pytest.mark.slow
def test_torchattacks_checks_a_sweep_on_the_zoo_cnn(tmp_path, in_process):
    """Both commands run in this process (each new process costs a TensorFlow import); torchattacks runs in the
    torch-backend process `crosscheck` starts."""
    pytest.importorskip("torchattacks")

    def capsrobust(*args):
        code, out, err = in_process(tmp_path / "home", *args)
        assert code == 0, err[-2000:]
        return out

    capsrobust("attack", "--model", "cnn-small", "--subset", "--method", "autoattack-fast", "--eps", "0.1",
               "--steps", "10", "--limit", "30", "--output", str(tmp_path))
    (sweep,) = tmp_path.glob("attack-cnn-small-*")
    printed = capsrobust("crosscheck", str(sweep), "--limit", "12")
    assert "torchattacks" in printed and "cnn-small at eps 0.1:" in printed
    (check,) = json.loads((sweep / "crosscheck.json").read_text())["checks"]
    assert check["images"] == 12 and check["invalid"] == 0
    # The same attack on the same model: they may differ on an image or two, never wholesale.
    assert abs(check["ours_robust"] - check["theirs_robust"]) <= 3
    assert check["ours_robust"] < 12 and check["theirs_robust"] < 12  # eps 0.1 fools some of the zoo's CNN
