// A browser phone: SIP.js over WebSocket, driven by run.mjs through
// `window.phone`. One phone per page. Everything it sees is kept in
// `window.phone.log` so that a failing test can print it.
import {
  Inviter,
  Registerer,
  RegistererState,
  SessionState,
  UserAgent,
} from "./node_modules/sip.js/lib/index.js";

const log = [];
function note(what) {
  log.push(`${new Date().toISOString()} ${what}`);
}

let userAgent = null;
let registerer = null;
let session = null;
let registered = false;
let sessionState = "none";
let incoming = 0;

function watch(s) {
  session = s;
  sessionState = "initial";
  s.stateChange.addListener((state) => {
    sessionState = state;
    note(`session ${state}`);
    if (state === SessionState.Established) {
      const pc = s.sessionDescriptionHandler?.peerConnection;
      if (pc) {
        note(`ice ${pc.iceConnectionState}`);
        pc.addEventListener("iceconnectionstatechange", () =>
          note(`ice ${pc.iceConnectionState}`),
        );
      }
    }
  });
}

const media = {
  sessionDescriptionHandlerOptions: { constraints: { audio: true, video: false } },
};

window.phone = {
  log,

  /// Registers `user@domain` over `server` (a ws:// or wss:// URL).
  async register({ server, domain, user, password }) {
    userAgent = new UserAgent({
      uri: UserAgent.makeURI(`sip:${user}@${domain}`),
      transportOptions: { server },
      authorizationUsername: user,
      authorizationPassword: password,
      logBuiltinEnabled: false,
      sessionDescriptionHandlerFactoryOptions: {
        peerConnectionConfiguration: { iceServers: [] },
      },
      delegate: {
        onInvite(invitation) {
          incoming += 1;
          note(`incoming call from ${invitation.remoteIdentity.uri}`);
          watch(invitation);
          invitation.accept(media).catch((e) => note(`accept failed: ${e}`));
        },
      },
    });
    await userAgent.start();
    note("transport connected");
    registerer = new Registerer(userAgent, { expires: 300 });
    registerer.stateChange.addListener((state) => {
      registered = state === RegistererState.Registered;
      note(`registration ${state}`);
    });
    await registerer.register({
      requestDelegate: {
        onReject(response) {
          note(`register rejected ${response.message.statusCode}`);
        },
      },
    });
  },

  /// Calls `target` (a SIP URI).
  async call(target) {
    const inviter = new Inviter(userAgent, UserAgent.makeURI(target), media);
    watch(inviter);
    await inviter.invite({
      requestDelegate: {
        onReject(response) {
          note(`call rejected ${response.message.statusCode}`);
        },
      },
    });
  },

  async hangup() {
    if (session && session.state === SessionState.Established) {
      await session.bye();
    }
  },

  async unregister() {
    if (registerer) {
      await registerer.unregister();
    }
    if (userAgent) {
      await userAgent.stop();
    }
  },

  /// What run.mjs polls.
  async state() {
    const pc = session?.sessionDescriptionHandler?.peerConnection;
    let audioBytesReceived = 0;
    let audioBytesSent = 0;
    if (pc) {
      const stats = await pc.getStats();
      stats.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio") {
          audioBytesReceived += s.bytesReceived ?? 0;
        }
        if (s.type === "outbound-rtp" && s.kind === "audio") {
          audioBytesSent += s.bytesSent ?? 0;
        }
      });
    }
    return {
      registered,
      session: sessionState,
      incoming,
      ice: pc ? pc.iceConnectionState : "none",
      audioBytesReceived,
      audioBytesSent,
    };
  },
};

note("ready");
