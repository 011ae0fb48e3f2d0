"""A few forward calls of the founding example in fp32 and bf16, for Nsight Compute."""
import torch

import phaseconv
from phaseconv import founding

for dtype in (torch.float32, torch.bfloat16):
    layer = phaseconv.ConvTranspose3d(**founding.LAYER_ARGS).cuda().to(dtype).eval()
    x = torch.rand(*founding.INPUT_SHAPE, device="cuda", dtype=dtype)
    with torch.no_grad():
        for _ in range(3):
            layer(x)
    torch.cuda.synchronize()
