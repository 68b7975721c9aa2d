export { runCli } from './cli';
export type { Io } from './cli';
