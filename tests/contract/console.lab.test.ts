import { SshHost } from "../../provider/host/ssh";
import { labSuite } from "../lab/labState";
import { consoleContract } from "./console.contract";

const { describe: labDescribe, lab } = labSuite();
let host: SshHost | undefined;
const sh = async (script: string) => {
    const r = await lab!.ssh(["sh", "-c", script]);
    if (r.code !== 0) throw new Error(`${script}: ${r.stderr}`);
};
consoleContract(labDescribe, () => ({
    host: (host ??= new SshHost(lab!.connection)),
    addUnit: (unit) => sh(`mkdir -p /run/systemd/system && printf '[Service]\\nExecStart=/bin/sleep infinity\\n' > /run/systemd/system/${unit} && systemctl daemon-reload`),
    dropUnit: (unit) => sh(`systemctl stop ${unit}; rm -f /run/systemd/system/${unit}; systemctl daemon-reload`),
}));
afterAll(() => host?.close());
