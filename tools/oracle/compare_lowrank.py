import json, sys
from safetensors.numpy import load_file
from safetensors import safe_open
import numpy as np
a = load_file(sys.argv[1]); b = load_file(sys.argv[2])
with safe_open(sys.argv[1], 'np') as f: ta = f.metadata()['torch']
with safe_open(sys.argv[2], 'np') as f: tb = f.metadata()['torch']
worst = max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-30)) for k in b if k.endswith('.s') or k.endswith('.usvt'))
print(f'svd_lowrank torch {ta} vs fixture torch {tb}: worst relative difference {worst:.2e}')
