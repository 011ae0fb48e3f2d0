"""The user's verification of ModelNew against Model (see shared/founding-task.md).

Saves the original model's weights, loads them into both models and compares the outputs
with ``torch.allclose(atol=1e-5)``.  Uses CUDA when present, else the CPU (with a note).
Run from anywhere: ``python examples/kernelbench/check.py``.
"""
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model  # noqa: E402
import model_new  # noqa: E402


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        print("note: no CUDA device found; checking on the CPU (phaseconv's reference engine)")
    kw = dict(in_channels=32, out_channels=32, kernel_size=(3, 5, 7), stride=(2, 2, 2),
              padding=(1, 2, 3), output_padding=(1, 1, 1), groups=4)
    with tempfile.TemporaryDirectory() as tmp:
        original_path = os.path.join(tmp, "original_weights.pth")
        new_path = os.path.join(tmp, "new_weights.pth")
        torch.save(model.Model(**kw).state_dict(), original_path)
        torch.save(torch.load(original_path), new_path)  # the user hands the same weights on

        original_model = model.Model(**kw)
        original_model.load_state_dict(torch.load(original_path))
        original_model.eval().to(device)
        new_model = model_new.ModelNew(**kw)
        new_model.load_state_dict(torch.load(new_path))
        new_model.eval().to(device)

    x = torch.rand(8, 32, 12, 24, 48).to(device)
    with torch.no_grad():
        expected, got = original_model(x), new_model(x)
    if got.shape == expected.shape and torch.allclose(expected, got, atol=1e-5):
        print("Models match! All outputs are close.")
        return 0
    print("Models do not match.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
