import { SshHost } from "../../provider/host/ssh";
import { labSuite } from "../lab/labState";
import { startNestedQemu, stopNestedQemu } from "../lab/nestedQemu";
import { sriovContract } from "./sriov.contract";

const { describe: labDescribe, lab } = labSuite();
const PIDFILE = "/run/pv-sriov-contract.pid";
let host: SshHost | undefined;
sriovContract(labDescribe, () => ({
    host: (host ??= new SshHost(lab!.connection)),
    async hold(vf) {
        const vm = await startNestedQemu(lab!, [{ host: vf }], PIDFILE);
        if (vm.code !== 0) throw new Error(`nested QEMU refused ${vf}: ${vm.stderr}`);
        return () => stopNestedQemu(lab!, PIDFILE);
    },
}));
afterAll(async () => {
    if (lab) await stopNestedQemu(lab, PIDFILE);
    await host?.close();
});
