/**
 * IommuBinding create+delete of the lab's 2-function group (VGA + HD audio), interleaved in one run with a plain
 * shell script doing the same sysfs writes and with driverctl: locally inside the guest (the provider on its local
 * host) and over SSH (the provider through one ssh2 connection vs the script through the same connection).
 */
import { SshHost } from "../../provider/host/ssh";
import { check, create, remove } from "../../provider/iommuBinding";
import { GUEST_DIR } from "../lab/guest";
import type { LabHandle } from "../lab/lab";
import { BenchRow, GUEST_ROUNDS, hostScript, median, runGuestBench, runHostRounds } from "./types";

const GPU = "0000:01:00.0";
const AUDIO = "0000:01:00.1";

/** What a careful wiki reader types: driverctl's sequence for both functions, then back. */
export const SHELL_SCRIPT = `#!/bin/bash
set -e
modprobe vfio-pci
for d in ${GPU}:bochs-drm ${AUDIO}:snd_hda_intel; do
  a=\${d%:*}; drv=\${d##*:}
  echo "$a" > /sys/bus/pci/drivers/$drv/unbind
  echo vfio-pci > /sys/bus/pci/devices/$a/driver_override
  echo "$a" > /sys/bus/pci/drivers_probe
done
for d in ${GPU}:bochs-drm ${AUDIO}:snd_hda_intel; do
  a=\${d%:*}; drv=\${d##*:}
  echo > /sys/bus/pci/devices/$a/driver_override
  echo "$a" > /sys/bus/pci/drivers/vfio-pci/unbind
  echo "$a" > /sys/bus/pci/drivers/$drv/bind
done
`;

/** Runs in the guest (Node 18): the three contenders interleaved (see GUEST_ROUNDS), times in ms as JSON. */
const GUEST_BENCH = (iterations: number) => `
const { execFileSync } = require("child_process");
const p = require("${GUEST_DIR}/dist/provider").iommuBinding;
${GUEST_ROUNDS}
(async () => {
  const checked = await p.check({}, { device: "${GPU}" });
  if (checked.failures.length) throw new Error(JSON.stringify(checked.failures));
  const t = await rounds(${iterations}, {
    provider: async () => {
      const { outs } = await p.create(checked.inputs);
      await p.delete(outs.address, outs);
    },
    script: async () => execFileSync("bash", ["${GUEST_DIR}/bench-bind.sh"]),
    driverctl: async () => {
      for (const a of ["${GPU}", "${AUDIO}"]) execFileSync("driverctl", ["--nosave", "set-override", a, "vfio-pci"]);
      for (const a of ["${GPU}", "${AUDIO}"]) execFileSync("driverctl", ["--nosave", "unset-override", a]);
    },
  });
  process.stdout.write(JSON.stringify(t));
})().catch((e) => { console.error(e); process.exit(1); });
`;

async function driverOf(lab: LabHandle, bdf: string): Promise<string> {
    const r = await lab.ssh(["readlink", `/sys/bus/pci/devices/${bdf}/driver`]);
    return r.stdout.trim().split("/").pop() ?? "";
}

export async function benchIommu(lab: LabHandle, iterations = 7): Promise<BenchRow[]> {
    // Locally in the guest.
    const local = await runGuestBench<"provider" | "script" | "driverctl">(lab, "bench-bind.sh", SHELL_SCRIPT, GUEST_BENCH(iterations));
    const script = median(local.script);
    const rows: BenchRow[] = [
        { name: "IommuBinding create+delete, provider (local in guest)", medianMs: median(local.provider), ratio: median(local.provider) / script, baseline: "shell script", target: 1.2 },
        { name: "same sysfs writes, plain shell script (local in guest)", medianMs: script },
        { name: "driverctl set-override + unset-override (local in guest)", medianMs: median(local.driverctl), ratio: median(local.driverctl) / script, baseline: "shell script" },
    ];

    // Over SSH: one ssh2 connection, opened before timing, used by both contenders.
    const host = new SshHost(lab.connection);
    try {
        const checked = await check({}, { device: GPU }, host);
        if (checked.failures.length) throw new Error(JSON.stringify(checked.failures));
        const { ms, trips } = await runHostRounds(host, iterations, {
            provider: async () => {
                const { outs } = await create(checked.inputs, host);
                await remove(outs.address, outs, host);
            },
            script: hostScript(host, ["bash", `${GUEST_DIR}/bench-bind.sh`]),
        });
        rows.push(
            { name: "IommuBinding create+delete, provider (over SSH)", medianMs: median(ms.provider), ratio: median(ms.provider) / median(ms.script), baseline: "shell script over the same connection", roundTrips: trips.provider, target: 1.5 },
            { name: "same sysfs writes, plain shell script (over SSH)", medianMs: median(ms.script), roundTrips: trips.script },
        );
    } finally {
        await host.close();
    }
    if ((await driverOf(lab, GPU)) !== "bochs-drm" || (await driverOf(lab, AUDIO)) !== "snd_hda_intel") throw new Error("the bench left the group changed");
    return rows;
}
