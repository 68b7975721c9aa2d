import { Tokenizer } from '@huggingface/tokenizers';
import { type ModelFiles, openFiles } from '@lora/tensor';

/**
 * Loads a Hugging Face tokenizer (`tokenizer.json`, and `tokenizer_config.json` when present) with
 * the maintained pure-JS `@huggingface/tokenizers`; from a directory (Node) or in-memory files.
 *
 * @example
 * ```ts
 * const tok = await loadTokenizer('SmolLM-135M');
 * const { ids } = tok.encode('Hello world');
 * console.log(tok.decode(ids));
 * ```
 */
export async function loadTokenizer(files: ModelFiles): Promise<Tokenizer> {
  const source = await openFiles(files);
  if (!(await source.has('tokenizer.json')))
    throw new Error(`${source.label}: no tokenizer.json; only fast (tokenizer.json) tokenizers are supported`);
  const json = JSON.parse(await source.text('tokenizer.json'));
  const config = (await source.has('tokenizer_config.json'))
    ? JSON.parse(await source.text('tokenizer_config.json'))
    : {};
  return new Tokenizer(json, config);
}

export { Tokenizer };
