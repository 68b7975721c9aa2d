import { Tokenizer } from '@huggingface/tokenizers';
import { type HubOptions, type ModelFiles, openFiles } from '@lora/tensor';

/**
 * Loads a Hugging Face tokenizer (`tokenizer.json`, and `tokenizer_config.json` when present) with
 * the maintained pure-JS `@huggingface/tokenizers`; from a Hub repo id (the local Hub cache, downloading
 * into it when missing; Node), a directory (Node), or in-memory files. `options` as `fromPretrained`'s.
 *
 * @example
 * ```ts
 * const tok = await loadTokenizer('HuggingFaceTB/SmolLM-135M', { localFilesOnly: true });
 * const { ids } = tok.encode('Hello world');
 * console.log(tok.decode(ids));
 * ```
 */
export async function loadTokenizer(files: ModelFiles, options: HubOptions = {}): Promise<Tokenizer> {
  const source = await openFiles(files, options);
  if (!(await source.has('tokenizer.json')))
    throw new Error(`${source.label}: no tokenizer.json; only fast (tokenizer.json) tokenizers are supported`);
  const json = JSON.parse(await source.text('tokenizer.json'));
  const config = (await source.has('tokenizer_config.json'))
    ? JSON.parse(await source.text('tokenizer_config.json'))
    : {};
  return new Tokenizer(json, config);
}

export { Tokenizer };
