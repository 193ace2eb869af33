/** One line of `npm run bench`. */
export interface BenchRow {
    /** What was measured, e.g. "IommuBinding create+delete (provider, local in guest)". */
    name: string;
    /** Median wall time of one operation, in milliseconds. */
    medianMs: number;
    /** This row's median over its baseline's (a plain shell script doing the same sysfs writes). */
    ratio?: number;
    /** What the ratio is against. */
    baseline?: string;
    /** Host round trips per operation (SSH rows). */
    roundTrips?: number;
    /** The target the ratio should meet, e.g. 1.2. */
    target?: number;
}

export function median(xs: number[]): number {
    const s = [...xs].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
