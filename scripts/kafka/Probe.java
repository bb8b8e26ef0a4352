// Waits until a Kafka cluster answers a real metadata request with the expected number of
// brokers, or says why not. Run by scripts/kafka/cluster as a single-file source program:
//   java -cp '<kafka libs>/*' scripts/kafka/Probe.java BOOTSTRAP BROKERS SECONDS [CLIENT_PROPERTIES]
// Exit 0: every broker is registered and a controller is known. Exit 1: not within SECONDS;
// the last error is printed on stderr.
import java.io.FileInputStream;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.DescribeClusterResult;

public class Probe {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: Probe BOOTSTRAP BROKERS SECONDS [CLIENT_PROPERTIES]");
            System.exit(2);
        }
        String bootstrap = args[0];
        int want = Integer.parseInt(args[1]);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[2]));

        Properties props = new Properties();
        if (args.length > 3) {
            try (FileInputStream in = new FileInputStream(args[3])) {
                props.load(in);
            }
        }
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "3000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");

        String last = "no answer yet";
        try (Admin admin = Admin.create(props)) {
            while (System.nanoTime() < deadline) {
                try {
                    DescribeClusterResult cluster =
                            admin.describeCluster(new DescribeClusterOptions().timeoutMs(4000));
                    int nodes = cluster.nodes().get(5, TimeUnit.SECONDS).size();
                    boolean controller = cluster.controller().get(5, TimeUnit.SECONDS) != null;
                    if (nodes >= want && controller) {
                        System.out.println(bootstrap + ": " + nodes + " broker(s), cluster id "
                                + cluster.clusterId().get(5, TimeUnit.SECONDS));
                        return;
                    }
                    last = nodes + " of " + want + " broker(s) registered"
                            + (controller ? "" : ", no controller yet");
                } catch (Exception e) {
                    Throwable cause = e.getCause() != null ? e.getCause() : e;
                    last = cause.getClass().getSimpleName() + ": " + cause.getMessage();
                }
                Thread.sleep(300);
            }
        }
        System.err.println(bootstrap + ": " + last);
        System.exit(1);
    }
}
