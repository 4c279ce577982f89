"""The report on equal values (the lower eval loss wins) and the AI Toolkit compare step."""

from __future__ import annotations

import json

import optuna
from optuna.trial import create_trial

from lora_sweep.views import report


def test_ties_go_to_the_lower_eval_loss_and_compare_is_shown(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s", direction="maximize")
    study.set_user_attr("metric", "json_fields")
    folders = []
    for number, (value, loss) in enumerate([(0.5, 4.33), (0.5, 3.62), (0.25, 1.0)]):
        folder = tmp_path / "trials" / str(number)
        folder.mkdir(parents=True)
        folders.append(folder)
        study.add_trial(create_trial(value=value, user_attrs={"best_eval_loss": loss, "trial_dir": str(folder)}))
    (folders[1] / "compare.jsonl").write_text(json.dumps({
        "prompt": [{"role": "user", "content": "Classify: storm hits coast"}], "reference": "weather",
        "base": "I think this is about the sea.", "adapter": "weather"}) + "\n")

    frame = report.load_frame(study)
    assert report.best_row(frame)["number"] == 1  # 0.5 and 0.5: trial 1 has the lower eval loss
    compared = report.compare_frame(frame)
    assert compared.to_dict("records") == [{"prompt": "Classify: storm hits coast", "reference": "weather",
                                            "base model": "I think this is about the sea.",
                                            "adapter (trial 1)": "weather"}]
    page = report.write_html(study, tmp_path / "report.html").read_text()
    assert "<h2>Base vs adapter on the compare file</h2>" in page and "I think this is about the sea." in page


def test_best_trial_breaks_ties_by_eval_loss(tmp_path):
    from lora_sweep.sweep.storage import best_trial

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s", direction="maximize")
    for value, loss in [(0.5, 4.33), (0.5, 3.62), (0.25, 1.0)]:
        study.add_trial(create_trial(value=value, user_attrs={"best_eval_loss": loss}))
    assert study.best_trial.number == 0  # optuna's: the first of the tie
    assert best_trial(study).number == 1
