// PortraitTalk front-end extension: gives the pack's nodes and its PTALK_LANDMARKS links a shared colour
// so a talking-face graph is easy to follow among other SD nodes.
import { app } from "../../scripts/app.js";

const NODE_COLOR = "#224a4a";
const NODE_BGCOLOR = "#2f5f5f";
const LINK_COLOR = "#7fd3c8";

app.registerExtension({
  name: "PortraitTalk.appearance",
  async setup() {
    if (app.canvas?.default_connection_color_byType) {
      app.canvas.default_connection_color_byType["PTALK_LANDMARKS"] = LINK_COLOR;
    }
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("PTalk")) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.color = NODE_COLOR;
      this.bgcolor = NODE_BGCOLOR;
      return r;
    };
  },
});
