// @lora-examples/plot is plain JavaScript; the part used here
declare module '@lora-examples/plot' {
  export interface Series {
    name: string;
    points: Array<[number, number]>;
  }
  export interface LineChart {
    title: string;
    x: string;
    y: string;
    series: Series[];
    logY?: boolean;
    width?: number;
    height?: number;
    points?: boolean;
  }
  export function plotLines(chart: LineChart, path: string): Promise<{ svg: string; png: string }>;
}
