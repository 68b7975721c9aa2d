/** Progress of one file's download from the Hugging Face Hub, as {@link HubOptions.onProgress} receives it. */
export interface DownloadProgress {
  /** The repository id (`HuggingFaceTB/SmolLM-135M`). */
  repo: string;
  /** The file's path in the repository. */
  file: string;
  /** Bytes of the file on disk so far (a resumed download starts above 0). */
  loaded: number;
  /** The file's size in bytes. */
  total: number;
  /** Bytes a partial download had left before this call (0 for a fresh download). */
  resumedFrom: number;
  /** True on the last call for this file, once it is complete in the cache. */
  done: boolean;
}

/**
 * How a Hugging Face Hub repository id (`fromPretrained('HuggingFaceTB/SmolLM-135M')`) is resolved:
 * from the local Hub cache (the layout `huggingface_hub` writes, shared with Python users) and, unless
 * offline, by downloading what the cache lacks. Defaults follow `huggingface_hub` and its environment
 * variables.
 */
export interface HubOptions {
  /** A branch, tag or commit hash. Default `'main'`. */
  revision?: string;
  /**
   * The Hub cache directory. Default: `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE`, else
   * `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
   */
  cacheDir?: string;
  /** Never touch the network: use the cache or fail. Also on when `HF_HUB_OFFLINE` is set to 1/ON/YES/TRUE. */
  localFilesOnly?: boolean;
  /**
   * An access token (`hf_…`) for private or gated repositories; `false` sends none. Default: `$HF_TOKEN`,
   * else the token file `huggingface-cli login` / `hf auth login` wrote (`$HF_TOKEN_PATH`, else `$HF_HOME/token`).
   */
  token?: string | false;
  /** The Hub's address. Default `$HF_ENDPOINT`, else `https://huggingface.co`. */
  hubUrl?: string;
  /** The `fetch` to use (a proxy, extra headers, tests). Default: the global `fetch`. */
  fetch?: typeof fetch;
  /** Called as each downloaded file progresses. Files found in the cache report nothing. */
  onProgress?: (progress: DownloadProgress) => void;
  /** Aborts downloads in progress; what was downloaded stays as a partial file the next call resumes. */
  signal?: AbortSignal;
  /** How long to wait for the Hub to answer a request, in ms (default 10 000; `$HF_HUB_ETAG_TIMEOUT` in seconds). */
  timeoutMs?: number;
}

/**
 * True when `id` is a valid Hub repository id (`name` or `namespace/name`), by huggingface_hub's rules:
 * ASCII letters, digits, `-`, `_`, `.`, at most 96 characters a part, not starting or ending with `-` or
 * `.`, no `--` or `..`, not ending in `.git`.
 *
 * @example
 * ```ts
 * isHubRepoId('HuggingFaceTB/SmolLM-135M'); // true
 * isHubRepoId('./models/smol'); // false
 * ```
 */
export function isHubRepoId(id: string): boolean {
  const part = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$/;
  const parts = id.split('/');
  return (
    parts.length <= 2 &&
    parts.every((p) => part.test(p)) &&
    !id.includes('--') &&
    !id.includes('..') &&
    !id.endsWith('.git')
  );
}
