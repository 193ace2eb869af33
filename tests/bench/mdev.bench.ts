/**
 * MdevInstance create+delete of one mtty-1 instance, interleaved in one run with `mdevctl start`/`stop` and with a
 * plain shell script doing the same sysfs writes: locally inside the guest (the provider on its local host) and over
 * SSH (the provider through one ssh2 connection vs the script through the same connection).
 */
import { SshHost } from "../../provider/host/ssh";
import { check, create, remove } from "../../provider/mdevInstance";
import { GUEST_DIR } from "../lab/guest";
import type { LabHandle } from "../lab/lab";
import { BenchRow, GUEST_ROUNDS, hostScript, median, runGuestBench, runHostRounds } from "./types";

const U_PROVIDER = "be0c4000-0000-4000-8000-000000000001";
const U_SCRIPT = "be0c4000-0000-4000-8000-000000000002";
const U_MDEVCTL = "be0c4000-0000-4000-8000-000000000003";
const TYPE_DIR = "/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1";

/** What a careful wiki reader types: create, then remove. */
export const SHELL_SCRIPT = `#!/bin/bash
set -e
echo "$1" > ${TYPE_DIR}/create
echo 1 > /sys/bus/mdev/devices/$1/remove
`;

/** Runs in the guest (Node 18): the three contenders interleaved (see GUEST_ROUNDS), times in ms as JSON. */
const GUEST_BENCH = (iterations: number) => `
const { execFileSync } = require("child_process");
const p = require("${GUEST_DIR}/dist/provider").mdevInstance;
${GUEST_ROUNDS}
(async () => {
  const checked = await p.check({}, { parent: "mtty", type: "mtty-1", uuid: "${U_PROVIDER}" });
  if (checked.failures.length) throw new Error(JSON.stringify(checked.failures));
  const t = await rounds(${iterations}, {
    provider: async () => {
      const { outs } = await p.create(checked.inputs);
      await p.delete(outs.uuid, outs);
    },
    script: async () => execFileSync("bash", ["${GUEST_DIR}/bench-mdev.sh", "${U_SCRIPT}"]),
    mdevctl: async () => {
      execFileSync("mdevctl", ["start", "-u", "${U_MDEVCTL}", "-p", "mtty", "-t", "mtty-1"]);
      execFileSync("mdevctl", ["stop", "-u", "${U_MDEVCTL}"]);
    },
  });
  process.stdout.write(JSON.stringify(t));
})().catch((e) => { console.error(e); process.exit(1); });
`;

async function leftovers(lab: LabHandle): Promise<string> {
    const r = await lab.ssh(["ls", "/sys/bus/mdev/devices"]);
    return r.stdout.split("\n").filter((u) => u.startsWith("be0c4000")).join(" ");
}

export async function benchMdev(lab: LabHandle, iterations = 7): Promise<BenchRow[]> {
    // Locally in the guest.
    const local = await runGuestBench<"provider" | "script" | "mdevctl">(lab, "bench-mdev.sh", SHELL_SCRIPT, GUEST_BENCH(iterations));
    const script = median(local.script);
    const rows: BenchRow[] = [
        { name: "MdevInstance create+delete, provider (local in guest)", medianMs: median(local.provider), ratio: median(local.provider) / script, baseline: "shell script", target: 1.2 },
        { name: "same sysfs writes, plain shell script (local in guest)", medianMs: script },
        { name: "mdevctl start + stop (local in guest)", medianMs: median(local.mdevctl), ratio: median(local.mdevctl) / script, baseline: "shell script" },
    ];

    // Over SSH: one ssh2 connection, opened before timing, used by both contenders.
    const host = new SshHost(lab.connection);
    try {
        const checked = await check({}, { parent: "mtty", type: "mtty-1", uuid: U_PROVIDER }, host);
        if (checked.failures.length) throw new Error(JSON.stringify(checked.failures));
        const { ms, trips } = await runHostRounds(host, iterations, {
            provider: async () => {
                const { outs } = await create(checked.inputs, host);
                await remove(outs.uuid, outs, host);
            },
            script: hostScript(host, ["bash", `${GUEST_DIR}/bench-mdev.sh`, U_SCRIPT]),
        });
        rows.push(
            { name: "MdevInstance create+delete, provider (over SSH)", medianMs: median(ms.provider), ratio: median(ms.provider) / median(ms.script), baseline: "shell script over the same connection", roundTrips: trips.provider, target: 1.5 },
            { name: "same sysfs writes, plain shell script (over SSH)", medianMs: median(ms.script), roundTrips: trips.script },
        );
    } finally {
        await host.close();
    }
    const left = await leftovers(lab);
    if (left) throw new Error(`the bench left mdevs behind: ${left}`);
    return rows;
}
