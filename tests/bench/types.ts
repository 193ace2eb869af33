import type { LabHandle } from "../lab/lab";
import { GUEST_DIR, installProvider } from "../lab/guest";

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

/**
 * The local half of a benchmark: copy the provider into the guest, upload the plain shell script the provider is
 * compared with (as GUEST_DIR/<scriptName>), and run the guest-side timing program, which prints
 * `{contender: [ms, ...]}` as JSON.
 */
export async function runGuestBench<K extends string>(lab: LabHandle, scriptName: string, shellScript: string, guestProgram: string): Promise<Record<K, number[]>> {
    await installProvider(lab);
    const put = await lab.ssh(["sh", "-c", `cat > ${GUEST_DIR}/${scriptName}`], { input: shellScript });
    if (put.code !== 0) throw new Error(put.stderr);
    const r = await lab.ssh(["node", "-e", guestProgram], { timeoutMs: 600_000 });
    if (r.code !== 0) throw new Error(`guest bench failed: ${r.stderr}`);
    return JSON.parse(r.stdout) as Record<K, number[]>;
}
