"""The founding example: the KernelBench-style layer phaseconv was built for.

``ConvTranspose3d(32, 32, kernel_size=(3, 5, 7), stride=2, padding=(1, 2, 3),
output_padding=1, groups=4, bias=False)`` on ``x = torch.rand(8, 32, 12, 24, 48)``, giving
``(8, 32, 24, 48, 96)``; it must match torch with ``allclose(atol=1e-5)`` in float32.
"""
LAYER_ARGS = dict(in_channels=32, out_channels=32, kernel_size=(3, 5, 7), stride=(2, 2, 2),
                  padding=(1, 2, 3), output_padding=(1, 1, 1), groups=4, bias=False)
INPUT_SHAPE = (8, 32, 12, 24, 48)
OUTPUT_SHAPE = (8, 32, 24, 48, 96)
ATOL = 1e-5
