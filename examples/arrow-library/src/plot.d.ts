// @lora-examples/plot is plain JavaScript (JSDoc types, no declarations): the one function used here.
declare module '@lora-examples/plot' {
  export interface LineChart {
    title: string;
    x: string;
    y: string;
    series: { name: string; points: [number, number][] }[];
    logY?: boolean;
    width?: number;
    height?: number;
    points?: boolean;
  }
  export function plotLines(chart: LineChart, path: string): Promise<{ svg: string; png: string }>;
}
