import * as tf from '@tensorflow/tfjs-core';
import { kaimingUniformDefault, uniformInit } from './init';
import { Module, type Parameter } from './module';

/** Options shared by {@link Conv1d} and {@link Conv2d}, as PyTorch's. */
export interface ConvOptions {
  stride?: number | number[];
  /** Zero padding per side, or `'valid'` (none) or `'same'` (output size = input size; stride 1 only). */
  padding?: number | number[] | 'valid' | 'same';
  dilation?: number | number[];
  groups?: number;
  bias?: boolean;
}

function pair(v: number | number[], n: number, what: string, layer: string): number[] {
  const out = typeof v === 'number' ? new Array(n).fill(v) : v;
  if (out.length !== n || !out.every((x) => Number.isInteger(x) && x >= 0))
    throw new Error(`${layer}: ${what} ${JSON.stringify(v)} must be ${n} non-negative integer(s)`);
  return out;
}

/**
 * N-d convolution in PyTorch's layouts (input `[N, C, ...]`, weight `[out, in/groups, ...k]`) on
 * tfjs's 2-D convolution (NHWC, filter `[kh, kw, in, out]`); transposes happen here, at the edges.
 * Groups run as separate convolutions; a dilation together with a stride (which tfjs refuses) is
 * done by spreading the kernel out with zeros, which is the same computation.
 */
function convNd(
  x: tf.Tensor,
  weight: tf.Tensor,
  bias: tf.Tensor | null,
  o: Required<Omit<ConvOptions, 'bias'>> & { spatial: number },
  layer: string,
): tf.Tensor {
  const nd = o.spatial;
  const batched = x.rank === nd + 2;
  if (!batched && x.rank !== nd + 1)
    throw new Error(
      `${layer}: expected a ${nd + 1}-D (unbatched) or ${nd + 2}-D (batched) input, got shape [${x.shape.join(', ')}]`,
    );
  const inChannels = (weight.shape[1] as number) * o.groups;
  const c = x.shape[batched ? 1 : 0] as number;
  if (c !== inChannels) {
    throw new Error(
      `${layer}: expected input with ${inChannels} channels, got ${c} (input shape [${x.shape.join(', ')}], weight shape [${weight.shape.join(', ')}], groups ${o.groups})`,
    );
  }
  const stride = pair(o.stride, nd, 'stride', layer);
  const dilation = pair(o.dilation, nd, 'dilation', layer);
  const kernel = weight.shape.slice(2) as number[];
  return tf.tidy(() => {
    let input = batched ? x : tf.expandDims(x, 0);
    // NC[H]W → NHWC (1-d convolutions get a height of 1)
    input = nd === 1 ? tf.expandDims(tf.transpose(input, [0, 2, 1]), 1) : tf.transpose(input, [0, 2, 3, 1]);
    let w = nd === 1 ? tf.expandDims(weight, 2) : weight; // [out, in/g, kh, kw]
    const k2 = nd === 1 ? [1, kernel[0] as number] : kernel;
    const s2 = nd === 1 ? [1, stride[0] as number] : stride;
    let d2 = nd === 1 ? [1, dilation[0] as number] : dilation;
    // the kernel's extent with its dilation (what the spread kernel below also has)
    const effective = k2.map((k, i) => (d2[i] as number) * (k - 1) + 1);
    if (s2.some((s) => s > 1) && d2.some((d) => d > 1)) {
      // Spread the kernel: zeros between taps, then convolve with dilation 1. Done one axis at a
      // time in at most 4 dimensions (tfjs-webgpu cannot index 6-d tensors).
      const [outC, inG] = w.shape as [number, number];
      const [kh, kw] = k2 as [number, number];
      const [dh, dw] = d2 as [number, number];
      const kh2 = (kh - 1) * dh + 1;
      const kw2 = (kw - 1) * dw + 1;
      let spread = tf.pad(tf.reshape(w, [outC * inG, kh, 1, kw]), [
        [0, 0],
        [0, 0],
        [0, dh - 1],
        [0, 0],
      ]);
      spread = tf.slice(tf.reshape(spread, [outC * inG, kh * dh, kw]), [0, 0, 0], [-1, kh2, -1]);
      spread = tf.pad(tf.reshape(spread, [outC * inG, kh2, kw, 1]), [
        [0, 0],
        [0, 0],
        [0, 0],
        [0, dw - 1],
      ]);
      spread = tf.slice(tf.reshape(spread, [outC * inG, kh2, kw * dw]), [0, 0, 0], [-1, -1, kw2]);
      w = tf.reshape(spread, [outC, inG, kh2, kw2]);
      d2 = [1, 1];
    }
    let pads: [number, number][];
    if (o.padding === 'valid')
      pads = [
        [0, 0],
        [0, 0],
      ];
    else if (o.padding === 'same') {
      if (s2.some((s) => s > 1)) throw new Error(`${layer}: padding='same' is not supported for strided convolutions`);
      pads = effective.map((e) => [Math.floor((e - 1) / 2), e - 1 - Math.floor((e - 1) / 2)] as [number, number]);
    } else {
      const p = pair(o.padding, nd, 'padding', layer);
      pads =
        nd === 1
          ? [
              [0, 0],
              [p[0] as number, p[0] as number],
            ]
          : (p.map((v) => [v, v]) as [number, number][]);
    }
    const filter = tf.transpose(w, [2, 3, 1, 0]); // [kh, kw, in/g, out]
    const explicit: [[0, 0], [number, number], [number, number], [0, 0]] = [
      [0, 0],
      pads[0] as [number, number],
      pads[1] as [number, number],
      [0, 0],
    ];
    const run = (inp: tf.Tensor4D, f: tf.Tensor4D) =>
      tf.conv2d(inp, f, s2 as [number, number], explicit, 'NHWC', d2 as [number, number]);
    let y: tf.Tensor4D;
    if (o.groups === 1) y = run(input as tf.Tensor4D, filter as tf.Tensor4D);
    else {
      const inG = inChannels / o.groups;
      const outG = (weight.shape[0] as number) / o.groups;
      const parts = Array.from({ length: o.groups }, (_, g) =>
        run(
          tf.slice(input, [0, 0, 0, g * inG], [-1, -1, -1, inG]) as tf.Tensor4D,
          tf.slice(filter, [0, 0, 0, g * outG], [-1, -1, -1, outG]) as tf.Tensor4D,
        ),
      );
      y = tf.concat(parts, 3);
    }
    if (bias) y = tf.add(y, bias);
    // NHWC → NC[H]W
    let out: tf.Tensor = nd === 1 ? tf.transpose(tf.squeeze(y, [1]), [0, 2, 1]) : tf.transpose(y, [0, 3, 1, 2]);
    if (!batched) out = tf.squeeze(out, [0]);
    return out;
  });
}

abstract class ConvNd extends Module {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly kernelSize: number[];
  readonly options: Required<Omit<ConvOptions, 'bias'>>;
  weight: Parameter;
  bias: Parameter | null;
  protected abstract readonly spatial: number;

  constructor(
    layer: string,
    nd: number,
    inChannels: number,
    outChannels: number,
    kernelSize: number | number[],
    options: ConvOptions & { paddingMode?: string },
  ) {
    super();
    const groups = options.groups ?? 1;
    if (!Number.isInteger(groups) || groups < 1)
      throw new Error(`${layer}: groups must be a positive integer, got ${groups}`);
    if (inChannels % groups !== 0)
      throw new Error(
        `${layer}: in_channels must be divisible by groups (in_channels ${inChannels}, groups ${groups})`,
      );
    if (outChannels % groups !== 0)
      throw new Error(
        `${layer}: out_channels must be divisible by groups (out_channels ${outChannels}, groups ${groups})`,
      );
    if (options.paddingMode !== undefined && options.paddingMode !== 'zeros')
      throw new Error(`${layer}: padding_mode '${options.paddingMode}' is not supported; only 'zeros'`);
    this.inChannels = inChannels;
    this.outChannels = outChannels;
    this.kernelSize = pair(kernelSize, nd, 'kernel_size', layer);
    if (this.kernelSize.some((k) => k < 1))
      throw new Error(`${layer}: kernel_size ${JSON.stringify(kernelSize)} must be positive`);
    this.options = {
      stride: options.stride ?? 1,
      padding: options.padding ?? 0,
      dilation: options.dilation ?? 1,
      groups,
    };
    const fanIn = (inChannels / groups) * this.kernelSize.reduce((a, b) => a * b, 1);
    this.weight = this.registerParameter(
      'weight',
      kaimingUniformDefault([outChannels, inChannels / groups, ...this.kernelSize], fanIn),
    );
    this.bias = this.registerParameter(
      'bias',
      options.bias === false ? null : uniformInit([outChannels], 1 / Math.sqrt(fanIn)),
    );
  }

  forward(x: tf.Tensor): tf.Tensor {
    return convNd(x, this.weight, this.bias, { ...this.options, spatial: this.spatial }, this.constructor.name);
  }
}

/**
 * 1-d convolution (PyTorch's `nn.Conv1d`): input `[N, C, L]`, weight `[out, in/groups, k]`.
 *
 * @example
 * ```ts
 * const conv = new Conv1d(16, 32, 3, { padding: 1 });
 * ```
 */
export class Conv1d extends ConvNd {
  protected readonly spatial = 1;
  constructor(
    inChannels: number,
    outChannels: number,
    kernelSize: number | number[],
    options: ConvOptions & { paddingMode?: string } = {},
  ) {
    super('Conv1d', 1, inChannels, outChannels, kernelSize, options);
  }
}

/**
 * 2-d convolution (PyTorch's `nn.Conv2d`): input `[N, C, H, W]`, weight `[out, in/groups, kh, kw]`.
 *
 * @example
 * ```ts
 * const conv = new Conv2d(3, 64, [3, 3], { stride: 2, padding: 1 });
 * ```
 */
export class Conv2d extends ConvNd {
  protected readonly spatial = 2;
  constructor(
    inChannels: number,
    outChannels: number,
    kernelSize: number | number[],
    options: ConvOptions & { paddingMode?: string } = {},
  ) {
    super('Conv2d', 2, inChannels, outChannels, kernelSize, options);
  }
}

/** Functional convolution with PyTorch layouts (`F.conv1d` / `F.conv2d`), for layers that own their weights elsewhere. */
export function conv(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor | null, options: ConvOptions = {}): tf.Tensor {
  const spatial = weight.rank - 2;
  if (spatial !== 1 && spatial !== 2)
    throw new Error(`conv: weight must be 3-D (conv1d) or 4-D (conv2d), got shape [${weight.shape.join(', ')}]`);
  return convNd(
    x,
    weight,
    bias,
    {
      stride: options.stride ?? 1,
      padding: options.padding ?? 0,
      dilation: options.dilation ?? 1,
      groups: options.groups ?? 1,
      spatial,
    },
    `conv${spatial}d`,
  );
}
