/**
 * `npm run bench`: boots the lab VM once, runs every benchmark in it, prints medians and ratios (and JSON with
 * --json). A benchmark, not a test: nothing here fails on a slow machine, only on a wrong result.
 */
import { bootLab } from "../lab/lab";
import { benchIommu } from "./iommu.bench";
import { benchLibvirt } from "./libvirt.bench";
import { benchMdev } from "./mdev.bench";
import { benchVm } from "./vm.bench";
import { BenchRow } from "./types";

function table(rows: BenchRow[]): string {
    const lines = rows.map((r) => {
        const ratio = r.ratio !== undefined ? `${r.ratio.toFixed(2)}× ${r.baseline}${r.target ? ` (target ≤ ${r.target}×)` : ""}` : "";
        const trips = r.roundTrips !== undefined ? `${r.roundTrips} round trips` : "";
        return `${r.name.padEnd(62)} ${r.medianMs.toFixed(1).padStart(9)} ms  ${ratio}${ratio && trips ? "; " : ""}${trips}`;
    });
    return lines.join("\n");
}

/** Set when every benchmark ran: a Node event loop that drains early (a handle wrongly unreferenced) must not pass
 *  for a finished run. */
let finished = false;
process.on("exit", (code) => {
    if (!finished && code === 0) {
        console.error("[bench] the run ended before every benchmark finished");
        process.exitCode = 1;
    }
});

async function main(): Promise<void> {
    const iterations = Number(process.env.BENCH_ITERATIONS ?? 7);
    const vm = await bootLab({ log: (m) => console.error(`[lab] ${m}`) });
    try {
        // Measure a machine at rest: boot jobs (the first minute of an emulated boot) are not the contenders' cost.
        const state = await vm.ssh(["systemctl", "is-system-running", "--wait"], { timeoutMs: 300_000 });
        console.error(`[bench] lab up (${vm.accel}, ${state.stdout.trim() || "state unknown"}); ${iterations} interleaved iterations per contender after one warm-up`);
        const rows: BenchRow[] = [];
        const step = async (name: string, run: () => Promise<BenchRow[]>) => {
            const t0 = Date.now();
            const got = await run();
            console.error(`[bench] ${name} done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
            rows.push(...got);
        };
        await step("IommuBinding", () => benchIommu(vm, iterations));
        await step("MdevInstance", () => benchMdev(vm, iterations));
        await step("PassthroughVm", () => benchVm(vm, Math.min(iterations, 5)));
        await step("PassthroughVm backend libvirt", () => benchLibvirt(vm, Math.min(iterations, 5)));
        finished = true;
        if (process.argv.includes("--json")) console.log(JSON.stringify(rows, null, 2));
        else console.log(table(rows));
    } finally {
        await vm.stop();
    }
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
