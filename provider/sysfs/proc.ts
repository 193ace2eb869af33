/**
 * Processes that hold a device node open, as our refusals name them: `PID 1234 (qemu-system-x86)`.
 */
import { Host, Op, OpResult } from "../host/types";

/** The PIDs of an `openers` or `groupHolders` answer, one per line; none when the op failed without data. */
export function pidsOf(r: OpResult | undefined): number[] {
    return r?.data ? r.data.split("\n").filter(Boolean).map(Number) : [];
}

/** `PID 1234 (qemu-system-x86), PID 99` for `pids`, their names read from /proc/PID/comm in one round trip. */
export async function describeHolders(host: Host, pids: number[]): Promise<string> {
    if (!pids.length) return "";
    const r = await host.run(pids.map((p): Op => ({ op: "read", path: `/proc/${p}/comm` })));
    return pids.map((p, i) => `PID ${p}${r[i]?.ok ? ` (${r[i].data.trim()})` : ""}`).join(", ");
}
