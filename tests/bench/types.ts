import type { Host } from "../../provider/host/types";
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

/*
 * How contenders are interleaved, in the guest and over SSH alike: after one untimed warm-up round (caches, the
 * provider's first interpreter and lock helper, code not yet compiled), every iteration runs each contender once, in
 * an order rotated per iteration (none always runs right after the same other), and each starts from a quiet machine:
 * `udevadm settle` first, untimed, so the uevents an earlier contender caused (a driver bind wakes udev for tens of
 * milliseconds on the emulated guest) are not charged to whichever runs next.
 */

/** Guest-side JavaScript defining `rounds(iterations, contenders)` (see above); resolves to `{name: [ms, ...]}`. */
export const GUEST_ROUNDS = `
async function rounds(iterations, contenders) {
  const { execFileSync } = require("child_process");
  const names = Object.keys(contenders);
  const t = Object.fromEntries(names.map((n) => [n, []]));
  for (const name of names) await contenders[name]();
  for (let i = 0; i < iterations; i++) {
    for (let j = 0; j < names.length; j++) {
      const name = names[(i + j) % names.length];
      execFileSync("udevadm", ["settle"]);
      const s = process.hrtime.bigint();
      await contenders[name]();
      t[name].push(Number(process.hrtime.bigint() - s) / 1e6);
    }
  }
  return t;
}
`;

/** The same rounds driven from here over one host connection; also counts each contender's round trips (the last
 *  iteration's, settling excluded). */
export async function runHostRounds<K extends string>(host: Host, iterations: number, contenders: Record<K, () => Promise<void>>): Promise<{ ms: Record<K, number[]>; trips: Record<K, number> }> {
    const names = Object.keys(contenders) as K[];
    const ms = Object.fromEntries(names.map((n) => [n, [] as number[]])) as Record<K, number[]>;
    const trips = Object.fromEntries(names.map((n) => [n, 0])) as Record<K, number>;
    for (const name of names) await contenders[name]();
    for (let i = 0; i < iterations; i++) {
        for (let j = 0; j < names.length; j++) {
            const name = names[(i + j) % names.length];
            const [settled] = await host.run([{ op: "exec", argv: ["udevadm", "settle"] }]);
            if (!settled.ok) throw new Error(`udevadm settle failed: ${settled.message}`);
            const t0 = host.roundTrips;
            const s = performance.now();
            await contenders[name]();
            ms[name].push(performance.now() - s);
            trips[name] = host.roundTrips - t0;
        }
    }
    return { ms, trips };
}

/** A contender that runs one program on the host (the plain shell script), failing loudly if it fails. */
export function hostScript(host: Host, argv: string[]): () => Promise<void> {
    return async () => {
        const [x] = await host.run([{ op: "exec", argv }]);
        if (!x.ok) throw new Error(`${argv.join(" ")} failed: ${x.message}`);
    };
}
